//! shopping-cart (stub).
