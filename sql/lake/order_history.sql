-- The dashboard's "The history of one sales order" (sql/queries/11_order_history.sql) in
-- Athena's SQL (Trino) over the lake's tables; DuckDB runs it as it is. The order id is the
-- one `?`: Athena's console asks for it, `aws athena start-query-execution
-- --execution-parameters 11204` passes it.
-- What changed from the PostgreSQL file, and nothing else: PostgreSQL compares each version's
-- row with the one before as jsonb (`to_jsonb(f)`, `LAG(to_jsonb(f))`) and names the changed
-- fields with string_agg over a VALUES list; Trino has neither a row-to-JSON cast of a table's
-- row nor a correlated string_agg, so each tracked field has its own LAG and its own
-- `IS DISTINCT FROM`, and concat_ws (which skips NULLs) names the changed ones, in the same order
-- with the same labels. `previous_fields IS NULL` (the first version) is the first record id's LAG
-- being NULL.
WITH versions AS (
    SELECT f.*,
           LAG(f.sales_record_id) OVER (ORDER BY f.sales_record_id) AS previous_record_id,
           LAG(f.units_sold) OVER (ORDER BY f.sales_record_id) AS previous_units_sold,
           LAG(f.unit_price) OVER (ORDER BY f.sales_record_id) AS previous_unit_price,
           LAG(f.currency_id) OVER (ORDER BY f.sales_record_id) AS previous_currency_id,
           LAG(f.design_id) OVER (ORDER BY f.sales_record_id) AS previous_design_id,
           LAG(f.agreed_delivery_location_id) OVER (ORDER BY f.sales_record_id)
               AS previous_agreed_delivery_location_id,
           LAG(f.agreed_delivery_date) OVER (ORDER BY f.sales_record_id)
               AS previous_agreed_delivery_date,
           LAG(f.agreed_payment_date) OVER (ORDER BY f.sales_record_id)
               AS previous_agreed_payment_date,
           LAG(f.counterparty_id) OVER (ORDER BY f.sales_record_id) AS previous_counterparty_id,
           LAG(f.sales_staff_id) OVER (ORDER BY f.sales_record_id) AS previous_sales_staff_id
    FROM fact_sales_order AS f
    WHERE f.sales_order_id = CAST(? AS integer)
)
SELECT ROW_NUMBER() OVER (ORDER BY v.sales_record_id) AS version,
       CASE WHEN v.is_deleted THEN 'deleted'
            WHEN v.previous_record_id IS NULL THEN 'placed'
            ELSE COALESCE(concat_ws(', ',
                CASE WHEN v.units_sold IS DISTINCT FROM v.previous_units_sold
                     THEN 'units sold' END,
                CASE WHEN v.unit_price IS DISTINCT FROM v.previous_unit_price
                     THEN 'unit price' END,
                CASE WHEN v.currency_id IS DISTINCT FROM v.previous_currency_id
                     THEN 'currency' END,
                CASE WHEN v.design_id IS DISTINCT FROM v.previous_design_id
                     THEN 'design' END,
                CASE WHEN v.agreed_delivery_location_id
                          IS DISTINCT FROM v.previous_agreed_delivery_location_id
                     THEN 'delivery location' END,
                CASE WHEN v.agreed_delivery_date IS DISTINCT FROM v.previous_agreed_delivery_date
                     THEN 'delivery date' END,
                CASE WHEN v.agreed_payment_date IS DISTINCT FROM v.previous_agreed_payment_date
                     THEN 'payment date' END,
                CASE WHEN v.counterparty_id IS DISTINCT FROM v.previous_counterparty_id
                     THEN 'counterparty' END,
                CASE WHEN v.sales_staff_id IS DISTINCT FROM v.previous_sales_staff_id
                     THEN 'staff' END), '')
       END AS changed,
       v.last_updated_date, v.last_updated_time,
       v.units_sold, v.unit_price, c.currency_code, v.units_sold * v.unit_price AS order_value,
       d.design_name, l.city AS delivery_city, v.agreed_delivery_date, v.agreed_payment_date,
       cp.counterparty_legal_name, st.first_name || ' ' || st.last_name AS staff_name
FROM versions AS v
JOIN dim_currency AS c ON c.currency_id = v.currency_id
JOIN dim_design AS d ON d.design_id = v.design_id
JOIN dim_location AS l ON l.location_id = v.agreed_delivery_location_id
JOIN dim_counterparty AS cp ON cp.counterparty_id = v.counterparty_id
JOIN dim_staff AS st ON st.staff_id = v.sales_staff_id
ORDER BY version
