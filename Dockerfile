FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamproc ./streamproc
COPY topology ./topology
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 6066
CMD ["streamproc", "worker"]
