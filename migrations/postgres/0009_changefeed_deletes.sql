-- What reads the change feed by SOP Instance UID asks about deletions (an instance's last
-- one; whether a creation was followed by one): the index holds deletions only, and
-- stores no longer write it.
DROP INDEX changefeed_sop;
CREATE INDEX changefeed_deletes ON changefeed (sop_instance_uid, sequence) WHERE action = 'delete';
