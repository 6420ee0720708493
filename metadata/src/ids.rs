//! Id newtypes shared by every crate: ledgers, entries and metadata sessions. Each has `Display`
//! and `FromStr` so it round-trips through keys, logs and command lines.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }
    };
}

id_type!(
    /// A ledger, allocated by [`crate::IdAllocator`]; unique for the life of a cluster.
    LedgerId(u64)
);
id_type!(
    /// An entry's position within its ledger, dense from 0.
    EntryId(u64)
);
id_type!(
    /// A metadata session (for etcd, the lease id).
    SessionId(i64)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let l = LedgerId(42);
        assert_eq!(l.to_string().parse::<LedgerId>(), Ok(l));
        assert_eq!("-7".parse::<SessionId>(), Ok(SessionId(-7)));
        assert!("x1".parse::<EntryId>().is_err());
    }
}
