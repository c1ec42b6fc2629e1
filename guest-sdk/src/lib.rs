//! cairn-guest (stub).
