//! cairn-store (stub).
