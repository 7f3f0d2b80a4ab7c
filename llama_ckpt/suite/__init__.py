"""The notebook suite: the phases as data and the papermill driver."""
