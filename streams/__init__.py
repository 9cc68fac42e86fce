"""Stream processing: ingest, dead-lettering and the feedback join, as faust agents around pure cores."""
