//! Commands: each mutation is its own type with its own reply, checked by the compiler
//! ([`Command::Reply`]); the writer runs them one after another in a [`Ctx`] and answers each
//! once its batch is durable. The writer only sees type-erased [`Job`]s.
//!
//! Must not: answer before the batch is durable ([`Answer::send`] is called by the writer
//! after the sync, with the sync's result).

use tokio::sync::oneshot;

use super::ctx::Ctx;
use super::StoreError;

/// A mutation of the store. `apply` reads the current state and records its changes in `cx`;
/// if it returns an error, everything it recorded is undone.
pub trait Command: Send + 'static {
    type Reply: Send + 'static;
    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError>;
}

/// A command and where its reply goes, with the types erased.
pub(crate) trait Job: Send {
    fn run(self: Box<Self>, cx: &mut Ctx<'_>) -> Box<dyn Answer>;
    /// Answers with an error without running.
    fn refuse(self: Box<Self>, err: StoreError);
}

/// A command's result, waiting for its batch to become durable.
pub(crate) trait Answer: Send {
    /// The command failed: the writer undoes what it recorded.
    fn failed(&self) -> bool;
    /// Sends the reply; `synced` is the batch's fate (an error replaces the command's result).
    fn send(self: Box<Self>, synced: Result<(), super::NotDurable>);
}

pub(crate) struct Typed<C: Command> {
    pub cmd: C,
    pub reply: oneshot::Sender<Result<C::Reply, StoreError>>,
}

struct Pending<R> {
    reply: oneshot::Sender<Result<R, StoreError>>,
    result: Result<R, StoreError>,
}

impl<C: Command> Job for Typed<C> {
    fn run(self: Box<Self>, cx: &mut Ctx<'_>) -> Box<dyn Answer> {
        let Typed { cmd, reply } = *self;
        Box::new(Pending { reply, result: cmd.apply(cx) })
    }

    fn refuse(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }
}

impl<R: Send + 'static> Answer for Pending<R> {
    fn failed(&self) -> bool {
        self.result.is_err()
    }

    fn send(self: Box<Self>, synced: Result<(), super::NotDurable>) {
        let answer = match synced {
            Ok(()) => self.result,
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        };
        let _ = self.reply.send(answer);
    }
}
