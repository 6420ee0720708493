//! etcd backend (being written).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {}
#[derive(Debug)]
pub struct EtcdStore {}
