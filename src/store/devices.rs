//! Devices (`userdevice_cursor`), their cursors and acks, and their live delivery logs
//! (`userdeviceseq_delivery`).

use super::*;

impl Store {
    /// The user's devices, in device-number order.
    pub fn devices(&self, user: UserId) -> Result<Vec<(DeviceNo, DeviceRecord)>> {
        let mut out = Vec::new();
        for kv in self.scan_prefix(T::UserdeviceCursor, keys::user_prefix(user)) {
            let (k, v) = kv?;
            let no = keys::be_u32(&k, 8).ok_or(StoreError::BadKey {
                tree: "userdevice_cursor",
                len: k.len(),
            })?;
            out.push((no, self.read("userdevice_cursor", &v)?));
        }
        Ok(out)
    }

    /// One device of the user, if it exists.
    pub fn device(&self, user: UserId, device: DeviceNo) -> Result<Option<DeviceRecord>> {
        match self.get(T::UserdeviceCursor, keys::user_device(user, device))? {
            Some(v) => Ok(Some(self.read("userdevice_cursor", &v)?)),
            None => Ok(None),
        }
    }

    pub fn device_count(&self) -> usize {
        self.count(T::UserdeviceCursor)
    }

    /// Stores a device, assigning a number when `device` is `None`.
    pub fn put_device(
        &self,
        user: UserId,
        device: Option<DeviceNo>,
        record: &DeviceRecord,
    ) -> Result<DeviceNo> {
        let mut w = Writes::default();
        let no = match device {
            Some(no) => no,
            None => {
                let mut u = self.user(user)?;
                let no = u.next_device;
                u.next_device += 1;
                w.put(T::UseridUser, keys::user_prefix(user), encode(&u)?);
                no
            }
        };
        w.put(
            T::UserdeviceCursor,
            keys::user_device(user, no),
            encode(record)?,
        );
        self.apply(w)?;
        Ok(no)
    }

    /// Drops a device's cursor and its delivery log.
    pub fn remove_device(&self, user: UserId, device: DeviceNo) -> Result<()> {
        let mut w = Writes::default();
        for kv in self.scan_prefix(T::UserdeviceseqDelivery, keys::user_device(user, device)) {
            w.del(T::UserdeviceseqDelivery, kv?.0);
        }
        w.del(T::UserdeviceCursor, keys::user_device(user, device));
        self.apply(w)
    }

    /// Records acks of one device, all or nothing: the new cursor, the deliveries it settles,
    /// and the messages whose receipt timer it cancels (given with their new state).
    pub fn apply_ack(
        &self,
        user: UserId,
        device: DeviceNo,
        record: &DeviceRecord,
        acked: &[Seq],
        settled: &[(Timer, MessageRecord)],
    ) -> Result<()> {
        let mut w = Writes::default();
        w.put(
            T::UserdeviceCursor,
            keys::user_device(user, device),
            encode(record)?,
        );
        for seq in acked {
            w.del(
                T::UserdeviceseqDelivery,
                keys::user_device_seq(user, device, *seq),
            );
        }
        for (t, m) in settled {
            w.put(T::UserseqMessage, keys::user_seq(t.user, t.seq), encode(m)?);
            w.del(
                T::DeadlineUserseq,
                keys::deadline_user_seq(t.deadline, t.user, t.seq),
            );
        }
        self.apply(w)
    }

    pub fn delivery(
        &self,
        user: UserId,
        device: DeviceNo,
        seq: Seq,
    ) -> Result<Option<DeliveryRecord>> {
        match self.get(
            T::UserdeviceseqDelivery,
            keys::user_device_seq(user, device, seq),
        )? {
            Some(v) => Ok(Some(self.read("userdeviceseq_delivery", &v)?)),
            None => Ok(None),
        }
    }

    /// Deliveries of one device with seq ≤ `upto`, oldest first.
    pub fn deliveries(
        &self,
        user: UserId,
        device: DeviceNo,
        upto: Seq,
    ) -> Result<Vec<(Seq, DeliveryRecord)>> {
        let start = keys::user_device_seq(user, device, 0);
        let end = keys::user_device_seq(user, device, upto);
        let mut out = Vec::new();
        for kv in self.range(
            T::UserdeviceseqDelivery,
            (
                Bound::Included(start.to_vec()),
                Bound::Included(end.to_vec()),
            ),
        ) {
            let (k, v) = kv?;
            let seq = keys::be_u64(&k, 12).ok_or(StoreError::BadKey {
                tree: "userdeviceseq_delivery",
                len: k.len(),
            })?;
            out.push((seq, self.read("userdeviceseq_delivery", &v)?));
        }
        Ok(out)
    }

    /// Every device of every user.
    pub fn all_devices(
        &self,
    ) -> impl Iterator<Item = Result<(UserId, DeviceNo, DeviceRecord)>> + '_ {
        self.range(T::UserdeviceCursor, (Bound::Unbounded, Bound::Unbounded))
            .map(move |kv| {
                let (k, v) = kv?;
                let bad = || StoreError::BadKey {
                    tree: "userdevice_cursor",
                    len: k.len(),
                };
                let user = keys::be_u64(&k, 0).ok_or_else(bad)?;
                let no = keys::be_u32(&k, 8).ok_or_else(bad)?;
                Ok((user, no, self.read("userdevice_cursor", &v)?))
            })
    }
}
