//! HL7 v2 orders in over MLLP: the listener (`listener.rs`: connections, framing with
//! `mllp.rs`, bounds), one message end to end (`handle.rs`: MSH-18 character set with
//! `text.rs`, hl7kit's parse, what it asks for with `orders.rs`, the order change applied
//! once, the ACK of `ack.rs`). Parsing itself is hl7kit's (segments, fields,
//! repetitions, components, escapes, delimiters from MSH-2).

pub mod ack;
pub mod handle;
pub mod listener;
pub mod mllp;
pub mod orders;
pub mod text;

pub use ack::{ack, AckCode, Refusal};
pub use listener::serve;
pub use mllp::{Mllp, MllpError};
pub use text::Charset;
