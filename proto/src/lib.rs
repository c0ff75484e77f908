//! The VM market's protocol: what a provider node and a publisher say to
//! each other, and the one price formula both compute. Types only (and the
//! framing that carries them), so both sides import it and neither imports
//! the other.
//!
//! # Layout
//! * [`frame`]: the `zennet-pay` frames — `Join`, [`Terms`], [`VmStatus`],
//!   [`UsageReport`], vouchers, `Bye` — and the subsystem name.
//! * [`price`]: [`Usage`] counters, [`price()`] and [`max_price_per_sec`],
//!   computed in integers so both sides get the same amount.
//! * [`stream`]: length-prefixed borsh framing with a size cap checked
//!   before reading, and [`PayStream`], whose receive side is cancel-safe.
//!
//! The payment-channel logic itself (vouchers, claims, closes) is not here:
//! it is `zennet-pay`, shared with the file network.

pub mod frame;
pub mod price;
pub mod stream;

pub use frame::{
    BYE_SESSION_OPEN, Frame, LAN_BOOT_MAC, LAN_SUBSYSTEM, PROTOCOL_VERSION, SUBSYSTEM, Terms,
    UsageReport, VmPhase, VmStatus,
};
pub use price::{Usage, max_price_per_sec, price};
pub use stream::{MAX_FRAME, PayStream, WireError, read_frame, write_frame};
