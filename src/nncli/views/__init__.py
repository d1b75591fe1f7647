"""Results -> Report (doc, frame, tables): tables, texts, plots, progress, pages."""
