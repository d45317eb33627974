-- readtrack's PostgreSQL schema, version 1. One table per tree of schema/store-layout.md; the
-- primary key is the tree's key order, so every range the store asks for is an index range.
-- Key columns are typed; `record` is the same bincode record sled stores. Unsigned 64-bit ids
-- are stored as bigint (readtrack never writes a value above 2^63-1 and refuses to).
-- Portability notes: schema/postgres/README.md.

-- The meta tree: schema_version (of the records, 5), next_user_id, counters.
CREATE TABLE readtrack_meta (
    key text COLLATE "C" NOT NULL PRIMARY KEY,
    record bytea NOT NULL
);

-- Bare JID -> user id. The JID's bytes order the key, as in sled.
CREATE TABLE readtrack_jid_userid (
    jid text COLLATE "C" NOT NULL PRIMARY KEY,
    user_id bigint NOT NULL
);

CREATE TABLE readtrack_userid_user (
    user_id bigint NOT NULL PRIMARY KEY,
    record bytea NOT NULL
);

-- The message log: replay reads (user_id, seq) > (user, acked_upto) in order.
CREATE TABLE readtrack_userseq_message (
    user_id bigint NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- The log's index: ids and peers of 32 messages per row (block = seq / 32).
CREATE TABLE readtrack_userblock_index (
    user_id bigint NOT NULL,
    block bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (user_id, block)
);

-- Devices per user and their cursors.
CREATE TABLE readtrack_userdevice_cursor (
    user_id bigint NOT NULL,
    device bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (user_id, device)
);

-- Live deliveries per device.
CREATE TABLE readtrack_userdeviceseq_delivery (
    user_id bigint NOT NULL,
    device bigint NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (user_id, device, seq)
);

-- Receipt timers by deadline (ms since the Unix epoch): due timers are a range up to now.
-- The one table not led by user_id (see README.md beside this file for Citus).
CREATE TABLE readtrack_deadline_userseq (
    deadline bigint NOT NULL,
    user_id bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (deadline, user_id, seq)
);

-- Read state per conversation.
CREATE TABLE readtrack_userpeer_conversation (
    user_id bigint NOT NULL,
    peer text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (user_id, peer)
);

-- The one process that may write (docs/reliability.md, "Several processes"): taken at open when
-- free or expired, renewed while the process runs, checked by every commit.
CREATE TABLE readtrack_owner (
    id integer NOT NULL PRIMARY KEY CHECK (id = 1),
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires timestamptz NOT NULL
);
