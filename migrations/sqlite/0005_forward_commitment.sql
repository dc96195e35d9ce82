-- Forwarding with storage commitment: a job whose instance the peer has stored waits in
-- state 'committing' for the peer's report on transaction commit_txn, which names the
-- instance by sent_uid (its UID as sent, new when de-identified); lease_until is then
-- the deadline after which it is sent again.
ALTER TABLE forward_jobs ADD COLUMN commit_txn TEXT;
ALTER TABLE forward_jobs ADD COLUMN sent_uid TEXT;
CREATE INDEX forward_jobs_commit ON forward_jobs (commit_txn);

