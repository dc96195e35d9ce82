-- Compression at rest (issue 18): an instance may be re-encoded after it was acknowledged.
-- received_sha256: the SHA-256 of the bytes as received (what the upload ACK and storage
-- commitment confirmed), when the stored object (sha256) is no longer those bytes.
ALTER TABLE instances ADD COLUMN received_sha256 TEXT;
-- NULL: not looked at yet; 'done' (re-encoded), 'skipped' (not a candidate), 'failed'
-- (the re-encoded object did not verify: the original is kept).
ALTER TABLE instances ADD COLUMN compress_state TEXT;
CREATE INDEX instances_compress_state ON instances (compress_state, study_pk);

-- Objects a compression job is about to write: recovery after a crash deletes those that
-- did not become an instance's object, and the originals of those that did.
CREATE TABLE compress_intents (
    object_key        TEXT    PRIMARY KEY,
    sop_instance_uid  TEXT    NOT NULL,
    old_key           TEXT    NOT NULL,
    -- 'pending': being written; 'swapped': the row points to it, the old object is to go.
    state             TEXT    NOT NULL DEFAULT 'pending',
    created_at        INTEGER NOT NULL
);
