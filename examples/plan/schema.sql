-- The schema the example migration starts from, as `pg_dump --schema-only --no-owner` writes
-- it (shortened). psql meta-commands such as \restrict are skipped by `phasegate plan`.
\restrict examplekey
SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);

CREATE TABLE public.orders (
    id integer NOT NULL,
    customer_id integer NOT NULL,
    status character varying(20) NOT NULL,
    note text,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);
CREATE SEQUENCE public.orders_id_seq AS integer START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1;
ALTER SEQUENCE public.orders_id_seq OWNED BY public.orders.id;
ALTER TABLE ONLY public.orders ALTER COLUMN id SET DEFAULT nextval('public.orders_id_seq'::regclass);
ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id);
-- Without --no-owner a dump names roles production has; missing ones are skipped.
ALTER TABLE public.orders OWNER TO shop_owner;
\unrestrict examplekey
