"""Near-realtime: which (ship, hour) partitions received narrow rows since a cursor.

No Dagster here: ``defs/realtime.py`` wraps these functions in a sensor, tests and the
benchmark call them directly. One module per concern:

* ``cursor``: the arrival column (``Arrival``) and the state kept between ticks
  (``Pending`` ranges, the ``Cursor`` stored as JSON);
* ``index``: the arrival index a tick relies on (name, DDL, diagnosis, creation);
* ``read``: the tick's queries and ``read_tick``, one snapshot, nothing written;
* ``plan``: ``plan_tick`` (pure: the runs to request and the next cursor) and
  ``group_runs`` (one run per hour);
* ``writers``: the open writer transactions a pending range waits for (``read_writers``);
* ``tick``: ``read_tick``, ``read_writers``, then ``plan_tick`` against the configured partitions.

Arrival is tracked by the monotonic ``id`` column (``N2W_REALTIME_CURSOR_COLUMN=id``, the
default) or, for tables without one, by ``server_created_time``; never by
``created_time``, so rows that arrive late for an old hour re-materialise that old hour.

One tick (``read_tick`` then ``plan_tick``):

1. **Batch**: the oldest ``batch_rows`` rows past the cursor's *frontier*, in arrival
   order, grouped by (ship, hour) — ``SELECT … FROM (SELECT … WHERE id > frontier
   ORDER BY id LIMIT n) GROUP BY ship, hour`` — an index range scan of at most ``n``
   entries, however large the table or the backlog: a long outage is worked off over
   several ticks, oldest rows first. The frontier moves to the batch's last arrival value
   only when the sensor returns the batch's run requests (Dagster saves the cursor after
   submitting them).
2. **Pending ranges**: ids are taken from a sequence when a row is inserted (or earlier:
   ``nextval`` before the insert), but become visible only when its transaction commits,
   so a tick can see id 101 while id 100's transaction is still open. Moving past 100
   would lose its rows for good (the bug of the cutoff-time poller this replaces). Every
   id range that the batch skipped (a *gap*) is kept in the cursor with the writer
   transactions open right after the snapshot that saw it (``writers``: the holders of a
   lock on the id sequence, read on the writers' server) and re-read each tick; rows that
   appear in a gap get their partitions re-run. A gap is dropped once every id in it is
   visible, or after one more read taken once all its writers have ended (on a replica:
   once it has replayed past them) — never earlier, and never given up (``writers.py``
   says why this is enough, also for a transaction that drew an id before it had an xid).
   With ``server_created_time`` (not unique, not ordered by commit) the whole batch window
   is a pending range instead, waiting for every transaction open in the database.
3. **Partitions**: a ship not in ``N2W_SHIPS`` has no partition (the ship dimension is
   static, see ``defs/realtime.py``) and an hour before ``N2W_PARTITION_START`` has none
   either: their rows are counted and reported, per tick and cumulatively in the cursor.
   An hour after the last partition (the current UTC hour) is *deferred* in the cursor
   and requested once that hour exists.

4. **Runs**: the partitions of one hour become one run over the range of ships that
   have new rows (``group_runs``): a run's start-up costs seconds, one more ship-hour
   well under one. Run keys hash the partitions' ``rt:{ship}:{hour}:{last}:{rows}``
   keys: the same tick evaluated twice gives the same keys (Dagster launches nothing
   twice), and any new row changes them.
"""

from n2w_pipeline.realtime.cursor import Arrival, Cursor, Key, Pending, arrival
from n2w_pipeline.realtime.index import (
    arrival_index_ddl,
    arrival_index_name,
    arrival_index_problem,
    ensure_arrival_index,
)
from n2w_pipeline.realtime.plan import (
    PlannedRun,
    RunGroup,
    TickPlan,
    describe_runs,
    group_runs,
    plan_tick,
)
from n2w_pipeline.realtime.read import (
    PartitionRows,
    TickRead,
    batch_query,
    pending_query,
    read_tick,
    window_queries,
)
from n2w_pipeline.realtime.tick import partition_hours, tick
from n2w_pipeline.realtime.writers import Writers, WritersNotVisible, read_writers, replay_lsn

__all__ = [
    "Arrival",
    "Cursor",
    "Key",
    "PartitionRows",
    "Pending",
    "PlannedRun",
    "RunGroup",
    "TickPlan",
    "TickRead",
    "Writers",
    "WritersNotVisible",
    "arrival",
    "arrival_index_ddl",
    "arrival_index_name",
    "arrival_index_problem",
    "batch_query",
    "describe_runs",
    "ensure_arrival_index",
    "group_runs",
    "partition_hours",
    "pending_query",
    "plan_tick",
    "read_tick",
    "read_writers",
    "replay_lsn",
    "tick",
    "window_queries",
]
