-- Title: Revenue by sales staff and department
-- Question: Who sells, and which departments bring the revenue in?
-- Reading: One row per member of staff and currency, with their department as it is now,
--   largest revenue first (latest version of each sales order).
-- Chart: bar x=revenue y=staff_name facet=currency_code
\ir filter.psql
WITH sales AS (:filtered_sales)
SELECT st.department_name,
       st.first_name || ' ' || st.last_name AS staff_name,
       s.sales_staff_id AS staff_id,
       s.currency_code,
       COUNT(*) AS orders,
       SUM(s.units_sold * s.unit_price) AS revenue
FROM sales AS s
JOIN dim_staff AS st ON st.staff_id = s.sales_staff_id
GROUP BY st.department_name, st.first_name, st.last_name, s.sales_staff_id, s.currency_code
ORDER BY revenue DESC, staff_id, s.currency_code
