-- Title: Top counterparties
-- Question: Which customers buy the most from us?
-- Reading: The ten counterparties with the highest sales revenue in each currency (latest
--   version of each sales order), with their legal country. Ties are broken by counterparty id.
-- Chart: bar x=revenue y=counterparty_legal_name facet=currency_code
\ir filter.psql
WITH sales AS (:filtered_sales),
by_counterparty AS (
    SELECT counterparty_id, currency_code,
           COUNT(*) AS orders, SUM(units_sold * unit_price) AS revenue
    FROM sales
    GROUP BY counterparty_id, currency_code
),
ranked AS (
    SELECT by_counterparty.*,
           ROW_NUMBER() OVER (PARTITION BY currency_code
                              ORDER BY revenue DESC, counterparty_id) AS rank
    FROM by_counterparty
)
SELECT r.currency_code, r.rank, cp.counterparty_legal_name, cp.counterparty_legal_country,
       r.counterparty_id, r.orders, r.revenue
FROM ranked AS r
JOIN dim_counterparty AS cp ON cp.counterparty_id = r.counterparty_id
WHERE r.rank <= 10
ORDER BY r.currency_code, r.rank
