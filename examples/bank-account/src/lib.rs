//! bank-account (stub).
