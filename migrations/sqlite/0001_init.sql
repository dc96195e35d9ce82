-- pacs-lite index, SQLite flavour. Keep in step with migrations/postgres.
CREATE TABLE studies (
    id                        INTEGER PRIMARY KEY,
    study_uid                 TEXT    NOT NULL UNIQUE,
    patient_name              TEXT,
    patient_name_key          TEXT,
    patient_id                TEXT,
    patient_birth_date        TEXT,
    patient_sex               TEXT,
    study_date                TEXT,
    study_time                TEXT,
    accession_number          TEXT,
    study_id                  TEXT,
    study_description         TEXT,
    referring_physician_name  TEXT,
    referring_physician_key   TEXT,
    modalities                TEXT    NOT NULL DEFAULT '',
    sop_classes               TEXT    NOT NULL DEFAULT '',
    num_series                INTEGER NOT NULL DEFAULT 0,
    num_instances             INTEGER NOT NULL DEFAULT 0,
    attrs_json                TEXT    NOT NULL,
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL
);
CREATE INDEX studies_patient_id ON studies (patient_id);
CREATE INDEX studies_patient_name_key ON studies (patient_name_key);
CREATE INDEX studies_study_date ON studies (study_date, study_time);
CREATE INDEX studies_accession_number ON studies (accession_number);
CREATE INDEX studies_updated_at ON studies (updated_at);

CREATE TABLE series (
    id                    INTEGER PRIMARY KEY,
    series_uid            TEXT    NOT NULL UNIQUE,
    study_pk              INTEGER NOT NULL REFERENCES studies (id),
    modality              TEXT,
    series_number         INTEGER,
    series_description    TEXT,
    body_part_examined    TEXT,
    performed_start_date  TEXT,
    performed_start_time  TEXT,
    num_instances         INTEGER NOT NULL DEFAULT 0,
    attrs_json            TEXT    NOT NULL,
    created_at            INTEGER NOT NULL
);
CREATE INDEX series_study_pk ON series (study_pk, series_number);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id                INTEGER PRIMARY KEY,
    sop_instance_uid  TEXT    NOT NULL UNIQUE,
    series_pk         INTEGER NOT NULL REFERENCES series (id),
    study_pk          INTEGER NOT NULL REFERENCES studies (id),
    sop_class_uid     TEXT    NOT NULL,
    instance_number   INTEGER,
    transfer_syntax   TEXT    NOT NULL,
    number_of_frames  INTEGER NOT NULL,
    num_rows          INTEGER,
    num_columns       INTEGER,
    object_key        TEXT    NOT NULL,
    size              INTEGER NOT NULL,
    part10_prefix     INTEGER NOT NULL,
    sha256            TEXT    NOT NULL,
    attrs_json        TEXT    NOT NULL,
    metadata_json     TEXT    NOT NULL,
    frame_table       BLOB,
    origin_kind       TEXT    NOT NULL,
    origin_who        TEXT    NOT NULL,
    origin_address    TEXT,
    stored_at         INTEGER NOT NULL
);
CREATE INDEX instances_series_pk ON instances (series_pk, instance_number);
CREATE INDEX instances_study_pk ON instances (study_pk);
CREATE INDEX instances_sop_class_uid ON instances (sop_class_uid);
