FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services services
COPY streams streams
COPY detectors detectors
COPY retrain_trigger retrain_trigger
COPY schemas schemas
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e .
EXPOSE 6066
CMD ["loopwatch", "worker"]
