//! `bounce-on-timeout` (`docs/rules.md`), in one place: a message that needs a receipt is logged
//! with a timer (armed here, called when it is logged), a receipt or marker from any device of
//! the recipient settles it, and a timer that fires sends the sender the seed's delay bounce,
//! again under the same id until the server confirms it. The service fires timers only while
//! the component link is up (a bounce written to a link that is down would be lost).

use super::receipts::logged_body;
use super::{Engine, Output, ReceiptPolicy, Result};
use crate::jid::Jid;
use crate::stanza::original::Class;
use crate::stanza::{Message, Outgoing};
use crate::store::{MessageRecord, ReceiptState, Timer, UserId};
use crate::time::Millis;

impl Engine {
    fn needs_receipt(&self, message: &Message, class: &Class, system: bool, seed: bool) -> bool {
        // Without an id no receipt can name the message, so there is nothing to wait for; the
        // bounce is the seed's, so only a sender that speaks it waits.
        seed && !class.signal()
            && message.id.is_some()
            && match self.config.policy {
                ReceiptPolicy::All => true,
                ReceiptPolicy::System => system,
                ReceiptPolicy::None => false,
            }
    }

    /// Arms the timer of a message that needs a receipt: the state it is logged with.
    pub(super) fn arm_bounce(
        &mut self,
        message: &Message,
        class: &Class,
        system: bool,
        seed_sender: bool,
        to: &Jid,
        now: Millis,
    ) -> ReceiptState {
        if !self.needs_receipt(message, class, system, seed_sender) {
            ReceiptState::NotRequired
        } else if self.pending_timers >= self.config.max_pending_timers {
            // A bound on memory and on tick work: past it, messages are still logged and
            // replayed, but nobody waits for their receipt.
            self.counters.timers_refused += 1;
            if crate::warnlimit::admit(crate::warnlimit::Warning::TimersFull, now) {
                tracing::warn!(limit = self.config.max_pending_timers, recipient = %to, "pending receipt timers at their limit; message logged without a timer");
            }
            ReceiptState::NotRequired
        } else {
            self.pending_timers += 1;
            ReceiptState::Waiting {
                deadline: now.plus(self.config.receipt_timeout).0,
            }
        }
    }

    /// A message some device acked no longer waits for a receipt.
    pub(super) fn settle(user: UserId, mut m: MessageRecord) -> Option<(Timer, MessageRecord)> {
        match m.receipt {
            ReceiptState::Waiting { deadline } => {
                m.receipt = ReceiptState::Acked;
                Some((
                    Timer {
                        deadline,
                        user,
                        seq: m.seq,
                    },
                    m,
                ))
            }
            _ => None,
        }
    }

    /// `bounce-on-timeout` (`docs/rules.md`): a message that needed a receipt and got none in time
    /// is bounced to its sender (seed dialect). It stays logged and unread.
    pub(super) fn fire_timers(&mut self, now: Millis) -> Result<()> {
        for timer in self.store.due_timers(now.0, self.config.timers_per_tick)? {
            let message = self.store.message(timer.user, timer.seq)?;
            let Some(mut m) = message.filter(|m| m.receipt.timer() == Some(timer.deadline)) else {
                self.store.settle_timer(timer, None)?; // stale: acked or gone
                self.pending_timers = self.pending_timers.saturating_sub(1);
                continue;
            };
            let (Ok(to), Some(id)) = (Jid::parse(&m.from), m.msg_id.clone()) else {
                if crate::warnlimit::admit(crate::warnlimit::Warning::BounceUnusable, now) {
                    tracing::warn!(seq = m.seq, from = %m.from, "cannot bounce: sender or id unusable");
                }
                self.settle_bounced(timer, m)?;
                continue;
            };
            let attempts = match m.receipt {
                ReceiptState::Bouncing { attempts, .. } => attempts,
                _ => 0,
            };
            if attempts == 0 {
                self.counters.bounces += 1;
            } else if attempts >= MAX_BOUNCE_ATTEMPTS {
                // A server module that never confirms (an older mod_readtrack?) must not get
                // the same bounce forever.
                tracing::warn!(seq = m.seq, sender = %to, id, attempts, "the server never confirmed this bounce; giving up (is mod_readtrack up to date?)");
                self.settle_bounced(timer, m)?;
                continue;
            } else {
                tracing::info!(seq = m.seq, sender = %to, id, attempts, "bounce not confirmed by the server; sending it again");
            }
            // The timer stays armed until the server confirms the bounce (`Engine::confirm`):
            // a bounce lost in a crash is sent again, and the module executes one id once.
            let retry = now.plus(self.config.receipt_timeout).0;
            m.receipt = ReceiptState::Bouncing {
                retry,
                attempts: attempts + 1,
            };
            self.store.rearm_timer(timer, retry, &m)?;
            self.held.push(Output::SendAsHost {
                stanza: Outgoing::Bounce {
                    from: self.config.domain.clone(),
                    to,
                    id,
                    body: logged_body(&m),
                    time: now,
                },
                confirm: Some(bounce_confirmation(timer.user, timer.seq)),
            });
        }
        Ok(())
    }

    /// Ends a message's receipt timer for good: it was bounced.
    fn settle_bounced(&mut self, timer: Timer, mut m: MessageRecord) -> Result<()> {
        m.receipt = ReceiptState::Bounced;
        self.store.settle_timer(timer, Some(&m))?;
        self.pending_timers = self.pending_timers.saturating_sub(1);
        Ok(())
    }

    /// The server executed the command with this confirmation id: a bounce is now settled.
    /// Unknown or repeated ids change nothing.
    pub fn confirm(&mut self, confirmation: &str) -> Result<()> {
        let Some((user, seq)) = parse_bounce_confirmation(confirmation) else {
            tracing::warn!(confirmation, "confirmation of an unknown command");
            return Ok(());
        };
        if let Some(m) = self.store.message(user, seq)? {
            if let ReceiptState::Bouncing { retry, .. } = m.receipt {
                self.settle_bounced(
                    Timer {
                        deadline: retry,
                        user,
                        seq,
                    },
                    m,
                )?;
            }
        }
        Ok(())
    }
}

/// How many times one bounce is sent without a confirmation before readtrack gives up.
pub const MAX_BOUNCE_ATTEMPTS: u32 = 5;

/// The command id of the bounce of one message: stable, so a resent bounce has the same id.
fn bounce_confirmation(user: UserId, seq: u64) -> String {
    format!("bounce-{user}-{seq}")
}

fn parse_bounce_confirmation(id: &str) -> Option<(UserId, u64)> {
    let (user, seq) = id.strip_prefix("bounce-")?.split_once('-')?;
    Some((user.parse().ok()?, seq.parse().ok()?))
}
