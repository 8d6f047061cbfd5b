-- The compose stack's sample producer: one order event per second, in a transaction of
-- its own, so `docker compose up` shows events flowing (the producer service runs it in a loop).
INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
SELECT 'order', (floor(random() * 100))::int::text, 'OrderPlaced',
       jsonb_build_object('amount', (floor(random() * 10000))::int, 'placed_at', now()),
       jsonb_build_object('source', 'compose-producer')
