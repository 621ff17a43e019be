FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY agents agents
COPY schemas schemas
COPY sinks sinks
COPY infra infra
RUN pip install --no-cache-dir -e .
ENV TICKFLOW_DATA_DIR=/data
CMD ["tickflow", "--help"]
