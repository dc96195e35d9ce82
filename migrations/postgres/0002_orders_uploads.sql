-- Radiology orders, the studies they are linked to, and offline uploads in progress.

CREATE TABLE radiology_orders (
    order_id             TEXT COLLATE "C"   PRIMARY KEY,
    accession_number    TEXT,
    patient_id          TEXT,
    patient_name        TEXT,
    patient_birth_date  TEXT,
    patient_sex         TEXT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);
CREATE INDEX radiology_orders_accession ON radiology_orders (accession_number);

-- Studies linked to an order explicitly (offline uploads); studies stored by C-STORE or
-- STOW-RS are matched by AccessionNumber when the order's studies are listed.
CREATE TABLE study_orders (
    study_uid    TEXT COLLATE "C"   PRIMARY KEY,
    order_id     TEXT COLLATE "C"   NOT NULL,
    linked_at   BIGINT  NOT NULL
);
CREATE INDEX study_orders_order ON study_orders (order_id);

CREATE TABLE offline_uploads (
    image_uuid         TEXT COLLATE "C"   PRIMARY KEY,
    order_id           TEXT COLLATE "C"   NOT NULL,
    filename           TEXT COLLATE "C"   NOT NULL,
    file_size         BIGINT  NOT NULL,
    mime_type          TEXT COLLATE "C"   NOT NULL,
    checksum           TEXT COLLATE "C"   NOT NULL,
    study_uid          TEXT COLLATE "C"   NOT NULL,
    series_uid         TEXT COLLATE "C"   NOT NULL,
    image_uid          TEXT COLLATE "C"   NOT NULL,
    state              TEXT COLLATE "C"   NOT NULL,
    received          BIGINT  NOT NULL DEFAULT 0,
    sop_instance_uid  TEXT,
    sha256            TEXT,
    stored_at         BIGINT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
CREATE INDEX offline_uploads_state ON offline_uploads (state, updated_at);

-- Received parts of an upload not complete yet, each an object in the store.
CREATE TABLE offline_upload_chunks (
    image_uuid   TEXT COLLATE "C"   NOT NULL,
    start       BIGINT  NOT NULL,
    length      BIGINT  NOT NULL,
    object_key   TEXT COLLATE "C"   NOT NULL,
    PRIMARY KEY (image_uuid, start)
);
