"""The analysts' dashboard: the business questions of ``sql/queries`` on a Streamlit page.

``app`` is the page, ``present`` turns results into figures and charts,
``source`` finds and opens the warehouse, ``launch`` starts ``streamlit run``.
"""
