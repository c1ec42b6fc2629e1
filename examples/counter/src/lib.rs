//! counter (stub).
