//! Wire contracts of Magnetar: the `.proto` files of the Pulsar binary protocol subset the broker
//! speaks and of the bookie RPC, the code generated from them, and the frame codec types.
//!
//! This crate holds no logic. Its protocol definitions arrive with the bookie tier (bookie RPC) and
//! the broker (Pulsar protocol); until then it is empty on purpose, so that the dependency order
//! `proto ← metadata ← bookie ← broker ← magnetar` is fixed from the start.
