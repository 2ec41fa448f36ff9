"""One module per benchmark: expands points, runs estimators and measurements, yields result rows."""
