-- One round trip per stored instance (issue 19): the rows an instance adds (its study and
-- series, created or counted; the instance; the change feed entry; a forwarding job per
-- destination) in one call, instead of five round trips (BEGIN, two statements, COMMIT, and
-- sqlx's Sync) or, in a batch, four per instance (two savepoint commands among them).
-- The same statements as the SQLite writer's (src/index/writer.rs); a test keeps the columns.

-- `current`, a backslash-separated set kept sorted (byte order), with `value` added.
CREATE FUNCTION pacs_merge_set(current TEXT, value TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(string_agg(v, '\' ORDER BY v COLLATE "C"), '')
    FROM (SELECT DISTINCT v FROM unnest(string_to_array(current, '\') || value) AS v
          WHERE v IS NOT NULL AND v <> '') AS items
$$;

-- True when the instance was recorded; false when its SOP Instance UID was stored already
-- (nothing changed; the caller looks the stored one up). A store of the same UID by another
-- process at the same moment makes the instance insert fail with a unique violation, after
-- which the caller finds that one stored. Parameters in the order of the writer's binds.
CREATE FUNCTION pacs_record_instance(
    p_study_uid TEXT, p_patient_name TEXT, p_patient_name_key TEXT, p_patient_id TEXT,
    p_patient_birth_date TEXT, p_patient_sex TEXT, p_study_date TEXT, p_study_time TEXT,
    p_accession_number TEXT, p_study_id TEXT, p_study_description TEXT,
    p_referring_physician_name TEXT, p_referring_physician_key TEXT, p_study_attrs TEXT,
    p_now BIGINT,
    p_series_uid TEXT, p_modality TEXT, p_series_number BIGINT, p_series_description TEXT,
    p_body_part_examined TEXT, p_performed_start_date TEXT, p_performed_start_time TEXT,
    p_series_attrs TEXT,
    p_sop_instance_uid TEXT, p_sop_class_uid TEXT, p_instance_number BIGINT,
    p_transfer_syntax TEXT, p_number_of_frames BIGINT, p_num_rows BIGINT, p_num_columns BIGINT,
    p_object_key TEXT, p_size BIGINT, p_sha256 TEXT, p_metadata_json TEXT, p_frame_table BYTEA,
    p_origin_kind TEXT, p_origin_who TEXT, p_origin_address TEXT, p_instance_attrs TEXT,
    p_part10_prefix BIGINT,
    -- Forwarding destinations, one per line ('' for none).
    p_forward_to TEXT
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    v_study BIGINT;
    v_modalities TEXT;
    v_sop_classes TEXT;
    v_updated_at BIGINT;
    v_series BIGINT;
    v_series_count BIGINT;
BEGIN
    IF EXISTS (SELECT 1 FROM instances WHERE sop_instance_uid = p_sop_instance_uid) THEN
        RETURN FALSE;
    END IF;
    -- The no-op update locks an existing study's row: processes sharing the database
    -- update its counters one after the other.
    INSERT INTO studies (study_uid, patient_name, patient_name_key, patient_id,
        patient_birth_date, patient_sex, study_date, study_time, accession_number, study_id,
        study_description, referring_physician_name, referring_physician_key, attrs_json,
        created_at, updated_at)
    VALUES (p_study_uid, p_patient_name, p_patient_name_key, p_patient_id,
        p_patient_birth_date, p_patient_sex, p_study_date, p_study_time, p_accession_number,
        p_study_id, p_study_description, p_referring_physician_name,
        p_referring_physician_key, p_study_attrs, p_now, p_now)
    ON CONFLICT (study_uid) DO UPDATE SET num_instances = studies.num_instances
    RETURNING id, modalities, sop_classes, updated_at
    INTO v_study, v_modalities, v_sop_classes, v_updated_at;
    INSERT INTO series (series_uid, study_pk, modality, series_number, series_description,
        body_part_examined, performed_start_date, performed_start_time, attrs_json,
        created_at, num_instances)
    VALUES (p_series_uid, v_study, p_modality, p_series_number, p_series_description,
        p_body_part_examined, p_performed_start_date, p_performed_start_time, p_series_attrs,
        p_now, 1)
    ON CONFLICT (series_uid) DO UPDATE SET num_instances = series.num_instances + 1
    RETURNING id, num_instances INTO v_series, v_series_count;
    INSERT INTO instances (sop_instance_uid, series_pk, study_pk, sop_class_uid,
        instance_number, transfer_syntax, number_of_frames, num_rows, num_columns, object_key,
        size, sha256, metadata_json, frame_table, origin_kind, origin_who, origin_address,
        stored_at, attrs_json, part10_prefix)
    VALUES (p_sop_instance_uid, v_series, v_study, p_sop_class_uid, p_instance_number,
        p_transfer_syntax, p_number_of_frames, p_num_rows, p_num_columns, p_object_key, p_size,
        p_sha256, p_metadata_json, p_frame_table, p_origin_kind, p_origin_who,
        p_origin_address, p_now, p_instance_attrs, p_part10_prefix);
    INSERT INTO changefeed (at, action, study_uid, series_uid, sop_instance_uid)
    VALUES (p_now, 'create', p_study_uid, p_series_uid, p_sop_instance_uid);
    IF p_forward_to <> '' THEN
        INSERT INTO forward_jobs (destination, sop_instance_uid, study_uid, not_before,
            created_at)
        SELECT d, p_sop_instance_uid, p_study_uid, p_now, p_now
        FROM unnest(string_to_array(p_forward_to, E'\n')) AS d
        ON CONFLICT (destination, sop_instance_uid) DO NOTHING;
    END IF;
    -- updated_at moves when a second old: the update then leaves every indexed column as
    -- it was, a HOT update.
    UPDATE studies SET num_instances = num_instances + 1,
        num_series = num_series + CASE WHEN v_series_count = 1 THEN 1 ELSE 0 END,
        modalities = pacs_merge_set(v_modalities, p_modality),
        sop_classes = pacs_merge_set(v_sop_classes, p_sop_class_uid),
        updated_at = CASE WHEN p_now >= v_updated_at + 1000 THEN p_now ELSE v_updated_at END
    WHERE id = v_study;
    RETURN TRUE;
END
$$;
