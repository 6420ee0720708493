//! [`Position`]: where an entry lives in a managed ledger, `ledger:entry`.
//!
//! Positions order by ledger, then entry. A position one past the last entry of a ledger
//! (`ledger:entries`) is a valid *boundary* (e.g. a cursor's read position after the last entry
//! of a closed ledger); readers treat it as the first entry of the next ledger.

use std::fmt;
use std::str::FromStr;

use magnetar_metadata::{EntryId, LedgerId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub ledger: LedgerId,
    pub entry: EntryId,
}

impl Position {
    pub const fn new(ledger: u64, entry: u64) -> Self {
        Position {
            ledger: LedgerId(ledger),
            entry: EntryId(entry),
        }
    }

    /// The position right after this one in the same ledger.
    pub fn next(self) -> Self {
        Position {
            ledger: self.ledger,
            entry: EntryId(self.entry.0.saturating_add(1)),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ledger, self.entry)
    }
}

/// Why a string is not a `ledger:entry` position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected `ledger:entry`")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParsePositionError(s.chars().take(64).collect());
        let (l, e) = s.split_once(':').ok_or_else(bad)?;
        Ok(Position {
            ledger: l.trim().parse().map_err(|_| bad())?,
            entry: e.trim().parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_ledger_position_orders_and_round_trips() {
        let a = Position::new(3, 9);
        let b = Position::new(4, 0);
        assert!(a < b && a < a.next());
        assert_eq!(a.to_string(), "3:9");
        assert_eq!("3:9".parse::<Position>(), Ok(a));
        assert!("3".parse::<Position>().is_err());
        assert!("x:1".parse::<Position>().is_err());
    }
}
