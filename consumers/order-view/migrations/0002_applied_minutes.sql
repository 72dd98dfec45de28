-- processed_events forgets event ids after dedup.retention_hours (see `Writer::prune_chunk`).
-- Its rows are keyed by the event's time, not by when it was applied, and a rebuild or a
-- replica catching up applies events of long ago: pruning by event time alone would forget
-- an id minutes after applying it, and its redelivery would be applied again. So the writer
-- notes, for every minute it applied events in, the oldest event time it applied then; the
-- pruner never deletes an id at or after the oldest event time applied within the retention.
CREATE TABLE applied_minutes (
    -- The start of the minute the batch committed in, in milliseconds since the Unix epoch.
    minute       INTEGER PRIMARY KEY,
    -- The oldest `occurred_at` of the events applied in that minute.
    oldest_event INTEGER NOT NULL
);

-- A file from before this table: its ids count as applied now, so none is forgotten before a
-- whole retention passed.
INSERT INTO applied_minutes (minute, oldest_event)
SELECT minute, oldest_event FROM (
    SELECT (CAST(strftime('%s', 'now') AS INTEGER) / 60) * 60000 AS minute,
           min(occurred_at) AS oldest_event
    FROM processed_events
)
WHERE oldest_event IS NOT NULL;
