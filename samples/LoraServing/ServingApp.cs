using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace LoraServing;

/// <summary>The minimal API: <c>GET /models</c>, <c>POST /models/{name}/predict</c> with <c>{"text": "..."}</c>, <c>GET /health</c>.</summary>
public static class ServingApp
{
    /// <summary>Request body of <c>POST /models/{name}/predict</c>.</summary>
    public sealed record PredictRequest(string? Text);

    /// <summary>Answer: the model, the predicted label and the class probabilities.</summary>
    public sealed record PredictResponse(string Model, string PredictedLabel, float[] Score);

    /// <summary>Builds the app over <paramref name="catalog"/>, listening on <paramref name="url"/> (e.g. http://127.0.0.1:0).</summary>
    public static WebApplication Build(ModelCatalog catalog, string url)
    {
        var builder = WebApplication.CreateBuilder();
        builder.WebHost.UseUrls(url);
        builder.Logging.ClearProviders();
        var app = builder.Build();

        app.MapGet("/health", () => Results.Ok(new { status = "ok", models = catalog.Models.Count }));
        app.MapGet("/models", () => Results.Ok(catalog.Models.Values.Select(m => new { name = m.Name, kind = m.Kind })));
        app.MapPost("/models/{name}/predict", (string name, PredictRequest? request) =>
        {
            if (!catalog.Models.TryGetValue(name, out var model))
            {
                return Results.NotFound(new { error = $"No model named '{name}'. Models: {string.Join(", ", catalog.Models.Keys)}." });
            }

            if (request?.Text is null)
            {
                return Results.BadRequest(new { error = "The body must be JSON {\"text\": \"...\"} with a non-null text." });
            }

            var prediction = model.Predict(request.Text);
            return Results.Ok(new PredictResponse(model.Name, prediction.PredictedLabel, prediction.Score));
        });
        return app;
    }
}
