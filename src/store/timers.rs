//! Receipt timers (`deadline_userseq`): arm, re-arm, settle, and list what is due.

use super::*;

impl Store {
    /// Removes a fired timer and stores the message's new state (if it still exists), together,
    /// so a crash cannot leave a message waiting without a timer.
    pub fn settle_timer(&self, timer: Timer, message: Option<&MessageRecord>) -> Result<()> {
        let mut w = Writes::default();
        if let Some(m) = message {
            w.put(
                T::UserseqMessage,
                keys::user_seq(timer.user, timer.seq),
                encode(m)?,
            );
        }
        w.del(
            T::DeadlineUserseq,
            keys::deadline_user_seq(timer.deadline, timer.user, timer.seq),
        );
        self.apply(w)
    }

    /// Moves a timer to `deadline` and stores the message's new state, together.
    pub fn rearm_timer(&self, timer: Timer, deadline: u64, message: &MessageRecord) -> Result<()> {
        let mut w = Writes::default();
        w.put(
            T::UserseqMessage,
            keys::user_seq(timer.user, timer.seq),
            encode(message)?,
        );
        w.del(
            T::DeadlineUserseq,
            keys::deadline_user_seq(timer.deadline, timer.user, timer.seq),
        );
        w.put(
            T::DeadlineUserseq,
            keys::deadline_user_seq(deadline, timer.user, timer.seq),
            EMPTY,
        );
        self.apply(w)
    }

    /// Timers with deadline ≤ `now`, earliest first, at most `limit`.
    pub fn due_timers(&self, now: u64, limit: usize) -> Result<Vec<Timer>> {
        let end = keys::deadline_user_seq(now, u64::MAX, u64::MAX);
        let mut out = Vec::new();
        for kv in self
            .range(
                T::DeadlineUserseq,
                (Bound::Unbounded, Bound::Included(end.to_vec())),
            )
            .take(limit)
        {
            out.push(Self::timer_from_key(&kv?.0)?);
        }
        Ok(out)
    }

    pub fn next_deadline(&self) -> Result<Option<u64>> {
        match self
            .range(T::DeadlineUserseq, (Bound::Unbounded, Bound::Unbounded))
            .next()
        {
            Some(kv) => Ok(Some(Self::timer_from_key(&kv?.0)?.deadline)),
            None => Ok(None),
        }
    }

    pub fn timer_count(&self) -> usize {
        self.count(T::DeadlineUserseq)
    }

    fn timer_from_key(k: &[u8]) -> Result<Timer> {
        let bad = || StoreError::BadKey {
            tree: "deadline_userseq",
            len: k.len(),
        };
        Ok(Timer {
            deadline: keys::be_u64(k, 0).ok_or_else(bad)?,
            user: keys::be_u64(k, 8).ok_or_else(bad)?,
            seq: keys::be_u64(k, 16).ok_or_else(bad)?,
        })
    }
}
