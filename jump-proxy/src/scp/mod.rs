//! Legacy scp (`scp -O`) through the gateway: which exec commands are trusted as scp
//! (`command`, the decision to leave a channel unrecorded), the rcp protocol's framing
//! (`wire`), and the observer that turns a transfer into file-operation events (`observer`).

mod command;
mod observer;
mod wire;

pub use command::{ScpCommand, MAX_COMMAND};
pub use observer::{ScpObserver, ScpOp, ScpPath};
