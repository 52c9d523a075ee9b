//! Recording an issued token (its metadata, never the JWT) with its event.

use crate::events::NewEvent;
use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::records::TokenRecord;
use crate::store::StoreError;

#[derive(Debug)]
pub struct CreateToken {
    pub record: TokenRecord,
    pub event: NewEvent,
}

impl Command for CreateToken {
    type Reply = ();

    fn apply(self, cx: &mut Ctx<'_>) -> Result<(), StoreError> {
        cx.put_token(&self.record)?;
        cx.new_event(self.event);
        Ok(())
    }
}
