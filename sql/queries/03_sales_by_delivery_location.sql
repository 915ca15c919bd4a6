-- Title: Sales by delivery country and city
-- Question: Where do our goods go?
-- Reading: One row per delivery country, city and currency (the agreed delivery location of the
--   latest version of each sales order), largest revenue first.
-- Chart: bar x=revenue y=country facet=currency_code
WITH sales AS (
    SELECT s.*, c.currency_code
    FROM fact_sales_order_current AS s
    JOIN dim_currency AS c ON c.currency_id = s.currency_id
    WHERE (CAST(:start_date AS date) IS NULL OR s.created_date >= CAST(:start_date AS date))
      AND (CAST(:end_date AS date) IS NULL OR s.created_date <= CAST(:end_date AS date))
      AND (CAST(:currency AS text) IS NULL OR c.currency_code = CAST(:currency AS text))
)
SELECT l.country, l.city, s.currency_code,
       COUNT(*) AS orders, SUM(s.units_sold) AS units, SUM(s.units_sold * s.unit_price) AS revenue
FROM sales AS s
JOIN dim_location AS l ON l.location_id = s.agreed_delivery_location_id
GROUP BY l.country, l.city, s.currency_code
ORDER BY revenue DESC, l.country, l.city, s.currency_code
