-- Radiology orders, the studies they are linked to, and offline uploads in progress.

CREATE TABLE radiology_orders (
    order_id            TEXT    PRIMARY KEY,
    accession_number    TEXT,
    patient_id          TEXT,
    patient_name        TEXT,
    patient_birth_date  TEXT,
    patient_sex         TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX radiology_orders_accession ON radiology_orders (accession_number);

-- Studies linked to an order explicitly (offline uploads); studies stored by C-STORE or
-- STOW-RS are matched by AccessionNumber when the order's studies are listed.
CREATE TABLE study_orders (
    study_uid   TEXT    PRIMARY KEY,
    order_id    TEXT    NOT NULL,
    linked_at   INTEGER NOT NULL
);
CREATE INDEX study_orders_order ON study_orders (order_id);

CREATE TABLE offline_uploads (
    image_uuid        TEXT    PRIMARY KEY,
    order_id          TEXT    NOT NULL,
    filename          TEXT    NOT NULL,
    file_size         INTEGER NOT NULL,
    mime_type         TEXT    NOT NULL,
    checksum          TEXT    NOT NULL,
    study_uid         TEXT    NOT NULL,
    series_uid        TEXT    NOT NULL,
    image_uid         TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    received          INTEGER NOT NULL DEFAULT 0,
    sop_instance_uid  TEXT,
    sha256            TEXT,
    stored_at         INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX offline_uploads_state ON offline_uploads (state, updated_at);

-- Received parts of an upload not complete yet, each an object in the store.
CREATE TABLE offline_upload_chunks (
    image_uuid  TEXT    NOT NULL,
    start       INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    object_key  TEXT    NOT NULL,
    PRIMARY KEY (image_uuid, start)
);
