//! Devices (`userdevice_cursor`), their cursors and acks, and their live delivery logs
//! (`userdeviceseq_delivery`).
//!
//! The engine looks a user's devices up several times per chat message (the recipient's
//! session, the sender's device for its sent copy, the device a receipt comes from), and each
//! lookup was a range over the tree and a decoding of every device of the user. The decoded
//! devices of recently used users are kept in a [`DeviceCache`]: a store call that writes a
//! device record it has at hand (`put_device`, `apply_ack`) puts that record in the cache, any
//! other write to the tree (removing a device, purging a user) makes the cache forget that
//! user, so a read returns what a scan would have read, pending writes included.

use super::*;

/// Users whose devices the cache keeps at most: past it the cache starts again empty (a bound
/// on memory, not an eviction policy; the users of the current commits come back at once).
const DEVICE_CACHE_USERS: usize = 4096;

/// The decoded devices of recently used users, each user's complete, in device-number order.
#[derive(Default)]
pub(super) struct DeviceCache {
    users: keys::UserMap<Vec<(DeviceNo, DeviceRecord)>>,
}

impl DeviceCache {
    fn get(&self, user: UserId) -> Option<&Vec<(DeviceNo, DeviceRecord)>> {
        self.users.get(&user)
    }

    /// Remembers the complete device list of `user`, read from the trees.
    fn fill(&mut self, user: UserId, devices: Vec<(DeviceNo, DeviceRecord)>) {
        if self.users.len() >= DEVICE_CACHE_USERS {
            self.users.clear();
        }
        self.users.insert(user, devices);
    }

    /// `record` is now device `no` of `user` (a user not cached stays so).
    pub(super) fn put(&mut self, user: UserId, no: DeviceNo, record: &DeviceRecord) {
        if let Some(list) = self.users.get_mut(&user) {
            match list.binary_search_by_key(&no, |(n, _)| *n) {
                Ok(at) => list[at].1.clone_from(record),
                Err(at) => list.insert(at, (no, record.clone())),
            }
        }
    }

    pub(super) fn forget(&mut self, user: UserId) {
        self.users.remove(&user);
    }

    pub(super) fn clear(&mut self) {
        self.users.clear();
    }
}

impl Store {
    /// The user's devices, in device-number order.
    pub fn devices(&self, user: UserId) -> Result<Vec<(DeviceNo, DeviceRecord)>> {
        let mut cache = self.device_cache();
        if let Some(devices) = cache.get(user) {
            return Ok(devices.clone());
        }
        let devices = self.scan_devices(user)?;
        cache.fill(user, devices.clone());
        Ok(devices)
    }

    /// The user's first device (in device-number order) that `wanted` accepts: what
    /// `devices(user)` followed by a `find` gives, without copying the devices not wanted.
    pub fn find_device(
        &self,
        user: UserId,
        wanted: impl Fn(&DeviceRecord) -> bool,
    ) -> Result<Option<(DeviceNo, DeviceRecord)>> {
        let mut cache = self.device_cache();
        if cache.get(user).is_none() {
            let devices = self.scan_devices(user)?;
            cache.fill(user, devices);
        }
        Ok(cache
            .get(user)
            .and_then(|devices| devices.iter().find(|(_, d)| wanted(d)).cloned()))
    }

    /// The user's devices as stored (pending writes included), without the cache.
    fn scan_devices(&self, user: UserId) -> Result<Vec<(DeviceNo, DeviceRecord)>> {
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
        if let Some(devices) = self.device_cache().get(user) {
            return Ok(devices
                .iter()
                .find(|(no, _)| *no == device)
                .map(|(_, d)| d.clone()));
        }
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
        self.apply_with(w, Some((user, no, record)), None)?;
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
        self.apply_with(w, Some((user, device, record)), None)
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
