-- Title: Sales by delivery country and city
-- Question: Where do our goods go?
-- Reading: One row per delivery country, city and currency (the agreed delivery location of the
--   latest version of each sales order), largest revenue first.
-- Chart: bar x=revenue y=country facet=currency_code
\ir filter.psql
WITH sales AS (:filtered_sales)
SELECT l.country, l.city, s.currency_code,
       COUNT(*) AS orders, SUM(s.units_sold) AS units, SUM(s.units_sold * s.unit_price) AS revenue
FROM sales AS s
JOIN dim_location AS l ON l.location_id = s.agreed_delivery_location_id
GROUP BY l.country, l.city, s.currency_code
ORDER BY revenue DESC, l.country, l.city, s.currency_code
