-- Title: Top designs by revenue
-- Question: Which designs earn the most?
-- Reading: The ten designs with the highest revenue in each currency (latest version of each
--   sales order), with the orders and units behind it. Designs are named with their id (names
--   repeat: several designs share a name). Ties are broken by design id.
-- Chart: bar x=revenue y=design facet=currency_code
\ir filter.psql
WITH sales AS (:filtered_sales),
by_design AS (
    SELECT design_id, currency_code,
           COUNT(*) AS orders, SUM(units_sold) AS units, SUM(units_sold * unit_price) AS revenue
    FROM sales
    GROUP BY design_id, currency_code
),
ranked AS (
    SELECT by_design.*,
           ROW_NUMBER() OVER (PARTITION BY currency_code ORDER BY revenue DESC, design_id) AS rank
    FROM by_design
)
SELECT r.currency_code, r.rank, d.design_name || ' #' || r.design_id AS design,
       r.orders, r.units, r.revenue
FROM ranked AS r
JOIN dim_design AS d ON d.design_id = r.design_id
WHERE r.rank <= 10
ORDER BY r.currency_code, r.rank
