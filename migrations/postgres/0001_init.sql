-- pacs-lite index, PostgreSQL flavour. Keep in step with migrations/sqlite.
CREATE TABLE studies (
    id                        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    num_series                BIGINT  NOT NULL DEFAULT 0,
    num_instances             BIGINT  NOT NULL DEFAULT 0,
    attrs_json                TEXT    NOT NULL,
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
    series_uid            TEXT    NOT NULL UNIQUE,
    study_pk              BIGINT  NOT NULL REFERENCES studies (id),
    modality              TEXT,
    series_number         BIGINT,
    series_description    TEXT,
    body_part_examined    TEXT,
    performed_start_date  TEXT,
    performed_start_time  TEXT,
    num_instances         BIGINT  NOT NULL DEFAULT 0,
    attrs_json            TEXT    NOT NULL,
    created_at            BIGINT  NOT NULL
);
CREATE INDEX series_study_pk ON series (study_pk, series_number);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sop_instance_uid  TEXT    NOT NULL UNIQUE,
    series_pk         BIGINT  NOT NULL REFERENCES series (id),
    study_pk          BIGINT  NOT NULL REFERENCES studies (id),
    sop_class_uid     TEXT    NOT NULL,
    instance_number   BIGINT,
    transfer_syntax   TEXT    NOT NULL,
    number_of_frames  BIGINT  NOT NULL,
    num_rows          BIGINT,
    num_columns       BIGINT,
    object_key        TEXT    NOT NULL,
    size              BIGINT  NOT NULL,
    sha256            TEXT    NOT NULL,
    metadata_json     TEXT    NOT NULL,
    frame_table       BYTEA,
    origin_kind       TEXT    NOT NULL,
    origin_who        TEXT    NOT NULL,
    origin_address    TEXT,
    stored_at         BIGINT  NOT NULL
);
CREATE INDEX instances_series_pk ON instances (series_pk, instance_number);
CREATE INDEX instances_study_pk ON instances (study_pk);
CREATE INDEX instances_sop_class_uid ON instances (sop_class_uid);
