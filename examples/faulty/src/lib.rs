//! faulty (stub).
