-- Orders become worklist items (issue 17): the requested procedure, its scheduled steps,
-- the order's Study Instance UID and status; HL7 messages taken (for duplicates); MPPS.

ALTER TABLE radiology_orders ADD COLUMN issuer_of_patient_id TEXT;
-- PatientName folded as the studies' patient_name_key is, for worklist matching.
ALTER TABLE radiology_orders ADD COLUMN patient_name_key TEXT;
ALTER TABLE radiology_orders ADD COLUMN requested_procedure_id TEXT;
ALTER TABLE radiology_orders ADD COLUMN requested_procedure_description TEXT;
ALTER TABLE radiology_orders ADD COLUMN referring_physician TEXT;
ALTER TABLE radiology_orders ADD COLUMN study_uid TEXT;
-- scheduled | in_progress | completed | discontinued
ALTER TABLE radiology_orders ADD COLUMN status TEXT NOT NULL DEFAULT 'scheduled';
-- rest | hl7
ALTER TABLE radiology_orders ADD COLUMN source TEXT NOT NULL DEFAULT 'rest';
CREATE INDEX radiology_orders_patient ON radiology_orders (patient_id);
CREATE INDEX radiology_orders_study ON radiology_orders (study_uid);
-- No index leads with status: with one, SQLite's planner would start worklist queries from
-- the few statuses instead of the steps' date, modality or station.
CREATE INDEX radiology_orders_updated ON radiology_orders (updated_at);

-- The scheduled procedure steps of an order: one worklist item each.
CREATE TABLE order_steps (
    order_id     TEXT    NOT NULL,
    step_id      TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    modality     TEXT,
    station_ae   TEXT,
    start_date   TEXT,            -- YYYYMMDD, local time
    start_time   TEXT,            -- HHMMSS
    description  TEXT,
    PRIMARY KEY (order_id, step_id)
);
CREATE INDEX order_steps_start ON order_steps (start_date, modality);
CREATE INDEX order_steps_modality ON order_steps (modality, start_date);
CREATE INDEX order_steps_station ON order_steps (station_ae, start_date);

-- HL7 v2 messages applied, by sender (MSH-3^MSH-4) and control id (MSH-10): a duplicate
-- gets the same acknowledgement again and changes nothing.
CREATE TABLE hl7_messages (
    sender       TEXT    NOT NULL,
    control_id   TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    ack          TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (sender, control_id)
);

-- Modality Performed Procedure Steps (N-CREATE, N-SET), their data set as last set.
CREATE TABLE mpps (
    sop_instance_uid  TEXT    PRIMARY KEY,
    order_id          TEXT,
    status            TEXT    NOT NULL,
    station_ae        TEXT,
    -- Series Instance UIDs of the Performed Series Sequence, backslash-separated.
    performed_series  TEXT,
    data_set          BLOB    NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX mpps_order ON mpps (order_id);
