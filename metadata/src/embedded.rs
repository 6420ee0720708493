//! embedded backend (being written).
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {}
#[derive(Debug)]
pub struct EmbeddedStore {}
