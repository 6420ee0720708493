//! A running bookie node (being written).
