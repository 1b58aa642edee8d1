//! Azure validation (todo).
