-- pacs-lite index, PostgreSQL flavour. Keep in step with migrations/sqlite.
-- Text columns use the "C" collation: DICOM values compare bytewise, as in SQLite.
CREATE TABLE studies (
    id                        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_uid                 TEXT COLLATE "C"    NOT NULL UNIQUE,
    patient_name              TEXT COLLATE "C",
    patient_name_key          TEXT COLLATE "C",
    patient_id                TEXT COLLATE "C",
    patient_birth_date        TEXT COLLATE "C",
    patient_sex               TEXT COLLATE "C",
    study_date                TEXT COLLATE "C",
    study_time                TEXT COLLATE "C",
    accession_number          TEXT COLLATE "C",
    study_id                  TEXT COLLATE "C",
    study_description         TEXT COLLATE "C",
    referring_physician_name  TEXT COLLATE "C",
    referring_physician_key   TEXT COLLATE "C",
    modalities                TEXT COLLATE "C"    NOT NULL DEFAULT '',
    sop_classes               TEXT COLLATE "C"    NOT NULL DEFAULT '',
    num_series                BIGINT  NOT NULL DEFAULT 0,
    num_instances             BIGINT  NOT NULL DEFAULT 0,
    attrs_json                TEXT COLLATE "C"    NOT NULL,
    created_at                BIGINT  NOT NULL,
    updated_at                BIGINT  NOT NULL
);
CREATE INDEX studies_patient_id ON studies (patient_id);
CREATE INDEX studies_patient_name_key ON studies (patient_name_key);
CREATE INDEX studies_study_date ON studies (study_date, study_time);
CREATE INDEX studies_accession_number ON studies (accession_number);
CREATE INDEX studies_updated_at ON studies (updated_at);

CREATE TABLE series (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_uid            TEXT COLLATE "C"    NOT NULL UNIQUE,
    study_pk              BIGINT  NOT NULL REFERENCES studies (id),
    modality              TEXT COLLATE "C",
    series_number         BIGINT,
    series_description    TEXT COLLATE "C",
    body_part_examined    TEXT COLLATE "C",
    performed_start_date  TEXT COLLATE "C",
    performed_start_time  TEXT COLLATE "C",
    num_instances         BIGINT  NOT NULL DEFAULT 0,
    attrs_json            TEXT COLLATE "C"    NOT NULL,
    created_at            BIGINT  NOT NULL
);
CREATE INDEX series_study_pk ON series (study_pk, series_number);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sop_instance_uid  TEXT COLLATE "C"    NOT NULL UNIQUE,
    series_pk         BIGINT  NOT NULL REFERENCES series (id),
    study_pk          BIGINT  NOT NULL REFERENCES studies (id),
    sop_class_uid     TEXT COLLATE "C"    NOT NULL,
    instance_number   BIGINT,
    transfer_syntax   TEXT COLLATE "C"    NOT NULL,
    number_of_frames  BIGINT  NOT NULL,
    num_rows          BIGINT,
    num_columns       BIGINT,
    object_key        TEXT COLLATE "C"    NOT NULL,
    size              BIGINT  NOT NULL,
    part10_prefix     BIGINT  NOT NULL,
    sha256            TEXT COLLATE "C"    NOT NULL,
    attrs_json        TEXT COLLATE "C"    NOT NULL,
    metadata_json     TEXT COLLATE "C"    NOT NULL,
    frame_table       BYTEA,
    origin_kind       TEXT COLLATE "C"    NOT NULL,
    origin_who        TEXT COLLATE "C"    NOT NULL,
    origin_address    TEXT COLLATE "C",
    stored_at         BIGINT  NOT NULL
);
CREATE INDEX instances_series_pk ON instances (series_pk, instance_number);
CREATE INDEX instances_study_pk ON instances (study_pk);
CREATE INDEX instances_sop_class_uid ON instances (sop_class_uid);
