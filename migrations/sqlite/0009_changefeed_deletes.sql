-- The change feed without AUTOINCREMENT, and its look-up by SOP Instance UID for deletions
-- only. Rows are never deleted, so a new row's sequence is the largest so far plus one, as
-- before; AUTOINCREMENT only added a write of sqlite_sequence to every commit. What reads
-- by SOP Instance UID asks about deletions (an instance's last one; whether a creation was
-- followed by one), so stores no longer write that index either.
CREATE TABLE changefeed_next (
    sequence          INTEGER PRIMARY KEY,
    at                INTEGER NOT NULL,
    action            TEXT    NOT NULL,
    study_uid         TEXT    NOT NULL,
    series_uid        TEXT    NOT NULL,
    sop_instance_uid  TEXT    NOT NULL
);
INSERT INTO changefeed_next (sequence, at, action, study_uid, series_uid, sop_instance_uid)
    SELECT sequence, at, action, study_uid, series_uid, sop_instance_uid FROM changefeed;
DROP TABLE changefeed;
ALTER TABLE changefeed_next RENAME TO changefeed;
CREATE INDEX changefeed_deletes ON changefeed (sop_instance_uid, sequence) WHERE action = 'delete';
