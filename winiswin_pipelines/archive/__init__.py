"""Hot-to-cold archival: daily Parquet on S3/R2 (a local folder by default), verified before the
hot rows are deleted, restorable, and readable together with the hot rows."""

from winiswin_pipelines.archive.archiver import ArchiveSummary, DayResult, archive_day, archive_old_data
from winiswin_pipelines.archive.history import read_archived, read_history
from winiswin_pipelines.archive.restore import restore_days

__all__ = ["ArchiveSummary", "DayResult", "archive_day", "archive_old_data", "read_archived", "read_history", "restore_days"]
