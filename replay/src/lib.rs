//! The SQLite replay store of autodidact.
